from tumor_export.cli import main

main()
