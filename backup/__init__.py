"""Backup logic: plain functions, importable and testable without a worker."""
