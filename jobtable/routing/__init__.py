"""Hot queues routed to a Kombu broker (RabbitMQ), same Job code (issue 18).

``routes`` reads the ``broker_routes`` setting (below settings); ``publish``
sends the same Celery-protocol messages through Kombu; ``relay`` moves a
routed queue's table rows (delayed jobs, retries, keyed jobs) to the broker
when due; ``member`` is the worker's Kombu source.  Kept empty: importing
``routing.routes`` from the settings must not import Kombu.
"""
