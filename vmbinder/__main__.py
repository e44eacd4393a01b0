from vmbinder.commands.main import main

main()
