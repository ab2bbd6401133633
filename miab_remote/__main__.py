from miab_remote.cli import main

raise SystemExit(main())
