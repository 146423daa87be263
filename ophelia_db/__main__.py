"""``python -m ophelia_db`` runs the command line."""

from ophelia_db.cli.app import main

main()
