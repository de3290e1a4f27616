"""Document filters, one class per filter; each returns None to keep or the reason to drop."""
