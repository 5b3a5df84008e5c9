from redgym.cli import main

raise SystemExit(main())
