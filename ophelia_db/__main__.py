"""``python -m ophelia_db`` runs the command line."""

from ophelia_db.cli import main

main()
