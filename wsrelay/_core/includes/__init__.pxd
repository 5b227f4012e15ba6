# C declarations of the libraries the core links with (not a Python package).
