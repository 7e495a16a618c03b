"""The guided tour: ``python -m minidist.demo`` (one module per chapter)."""
