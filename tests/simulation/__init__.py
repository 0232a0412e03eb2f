"""The cycle driven in one process: the real decisions and step openings on in-memory ports with a virtual clock."""
