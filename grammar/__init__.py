"""The lark grammars of setkey(8); installed as the package setkey.grammar."""
