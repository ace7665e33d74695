"""Where a request enters: who may call (:mod:`.guard`, :mod:`.limits`), which route and upstream
URL it gets (:mod:`.routing`), and which headers cross (:mod:`.headers`)."""
