from soundloc.cli import main

main()
