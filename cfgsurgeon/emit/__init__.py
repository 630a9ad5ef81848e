"""Emitters: IR → files for darknet and other frameworks. Each backend is one module."""
