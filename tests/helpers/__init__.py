"""Test helpers (never installed, never imported by the library): raw datasets in their
publishers' formats, ground truth read from tars, constructed predictions."""
