"""The mdoc manual pages; the package pfkeyd.man (and, for man(1),
<prefix>/share/man/man4 and man8)."""
