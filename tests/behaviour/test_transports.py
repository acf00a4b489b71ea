"""The behaviour suite (``suite.py``) run for every device transport and credential kind.

MQTT 5, when it lands, is one more line here with its driver (``drivers/mqtt.py``).
"""

from __future__ import annotations

from tests.behaviour.drivers.coap import CoapCertDriver, CoapPskDriver
from tests.behaviour.drivers.http import HttpDriver
from tests.behaviour.drivers.lwm2m import Lwm2mPskDriver
from tests.behaviour.drivers.mqtt import MqttApiKeyDriver, MqttDriver
from tests.behaviour.suite import BehaviourSuite


class TestHttp(BehaviourSuite):
    driver = HttpDriver


class TestMqttCert(BehaviourSuite):
    driver = MqttDriver


class TestMqttApiKey(BehaviourSuite):
    driver = MqttApiKeyDriver


class TestCoapPsk(BehaviourSuite):
    driver = CoapPskDriver


class TestCoapCert(BehaviourSuite):
    driver = CoapCertDriver


class TestLwm2mPsk(BehaviourSuite):
    driver = Lwm2mPskDriver
