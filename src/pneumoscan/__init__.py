"""pneumoscan: pneumonia detection in pediatric chest X-rays. Not a diagnostic device."""

__version__ = "0.1.0"
