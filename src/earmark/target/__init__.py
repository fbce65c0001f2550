"""Target side: the backing stores LUNs live on (portal, ACLs and admission come later)."""
