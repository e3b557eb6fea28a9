"""Secure Boot: signing PE images with Authenticode (sign) and what firmware would decide
about them (trust). The DER and Authenticode structures themselves are formats/."""
