"""setkey: a setkey(8) clone that drives pfkeyd over PF_KEY."""

__all__: list[str] = []
