-- wrk script: every request is POST /jobs with one small JSON job.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"queue":"bench","type":"bench","payload":{"n":1}}'
