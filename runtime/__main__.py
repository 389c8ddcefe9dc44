from tumor_runtime.cli.infer import main

main()
