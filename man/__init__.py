"""The mdoc manual pages; installed as the package pfkeyd.man."""
