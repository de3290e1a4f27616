"""Model growth as checkpoint transforms: LlamaPro depth, MSG width, vocabulary resize."""
