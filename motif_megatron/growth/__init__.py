"""Model growth as checkpoint transforms: LlamaPro depth, vocabulary resize (MSG width: to come)."""
