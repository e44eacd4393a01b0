"""The command line: Click commands over the library, and the only code that prints.

main.py is the root group and main(); output.py is everything printed; the other
modules are one family of commands each.
"""
