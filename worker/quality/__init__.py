"""Live quality from moderators' decisions (issue 23, point 4).

- `cache.ScoreCache`: a bounded LRU of what the worker published, id -> scores, model and
  policy version (filled by the Kafka publisher and the HTTP API; read by suggestscore, which
  puts the scores in its `Feedback` records, and by the tracker).
- `tenants.TenantLabels`: tenant -> a bounded metric label value (the policy's tenants,
  `default`, `other`).
- `tracker.QualityTracker`: one `Feedback` record -> the decision counters per tenant x label
  (flagged under the policy in force or not, decided 1 or 0), from which Prometheus recording
  rules derive precision, recall and the calibration gap over a window; and the policy's
  precision targets as a gauge.
- `consumer.FeedbackConsumer`: the `Feature` that reads the feedback topic in its own consumer
  group and hands each record to the tracker (with Kafka); HTTP only, suggestscore hands its
  records to the tracker itself.
"""
