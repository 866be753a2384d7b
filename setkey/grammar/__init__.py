"""The lark grammars of setkey(8); the package setkey.grammar."""
