from blockmae.cli import main

raise SystemExit(main())
