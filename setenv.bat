@echo off
rem Select the Prefect profile of pipeline-test (creating it when missing) and point it at the local
rem server started with `prefect server start`. Run it in every new terminal, after activating .venv.
setlocal
set "PT_PROFILE=pipeline-test"
set "PT_API_URL=http://127.0.0.1:4200/api"
prefect profile inspect %PT_PROFILE% >nul 2>&1 || prefect profile create %PT_PROFILE%
prefect profile use %PT_PROFILE%
rem no quotes around the URL: cmd would pass them on to Prefect literally
prefect config set PREFECT_API_URL=%PT_API_URL%
prefect config view
endlocal
