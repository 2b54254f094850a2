from dlboost_search.cli import main

main()
