"""Models the product can build or prepare itself, without any download (the tiny test model)."""
