"""The HIL harness: brokers, child processes, benches, scenarios, measurements and reports.

``hil.broker`` runs an MQTT broker for a bench (mosquitto as a child process, or amqtt
in-process); ``hil.procs`` starts, watches and stops the bench's other processes.
"""
