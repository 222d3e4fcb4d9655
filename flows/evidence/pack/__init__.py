"""The evidence pack: its files and hashing, the writer, report.html, JUnit, its folder, verify."""
