from vmbinder.cli import main

main()
