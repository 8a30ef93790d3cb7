from qpq_client.cli import main

main()
