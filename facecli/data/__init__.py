"""Datasets on disk: MXNet RecordIO without MXNet, folder layouts, packing, verification ``.bin`` files.

This stage imports none of the others (align, nn, train, eval); the modules talk to them only through files.
"""
