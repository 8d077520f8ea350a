from lightsr.cli import main

raise SystemExit(main())
