from tumor_train.cli import main

main()
