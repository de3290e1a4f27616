"""Tokenizer assets, training and vocabulary expansion."""
