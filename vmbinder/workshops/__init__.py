"""Workshops: many seats of one repository, described in one YAML file.

    file     the workshop file: parsing and validation, every seat's launch choices
    up       makes the seats that are missing or failed, as a sequence of named steps
    seats    finds the seats on the cloud: status, roster entries, down
    power    stops, starts, shelves or unshelves every seat at once, each its own result
    reset    makes one seat fresh: its server deleted and made again, with a new token
    roster   each seat's URL as CSV, JSON or a printable HTML page
"""
