from fleetmon.supervisor.cli import main

raise SystemExit(main())
