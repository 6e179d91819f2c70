from descan.cli import main

raise SystemExit(main())
