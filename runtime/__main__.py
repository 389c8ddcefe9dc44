from tumor_runtime.cli import main

main()
