"""SCSI layer, sans-I/O: CDB builders and parsers, sense data, and the SBC disk command set."""
