"""The behaviour suite (``suite.py``) run for every device transport and credential kind.

MQTT 5 is two classes here with their drivers (``drivers/mqtt.py``).
"""

from __future__ import annotations

from tests.behaviour.drivers.coap import CoapCertDriver, CoapPskDriver
from tests.behaviour.drivers.http import HttpDriver
from tests.behaviour.drivers.lwm2m import Lwm2mPskDriver
from tests.behaviour.drivers.mqtt import (
    Mqtt5ApiKeyDriver,
    Mqtt5Driver,
    MqttApiKeyDriver,
    MqttDriver,
)
from tests.behaviour.suite import BehaviourSuite


class TestHttp(BehaviourSuite):
    driver = HttpDriver


class TestMqttCert(BehaviourSuite):
    driver = MqttDriver


class TestMqttApiKey(BehaviourSuite):
    driver = MqttApiKeyDriver


class TestMqtt5Cert(BehaviourSuite):
    driver = Mqtt5Driver


class TestMqtt5ApiKey(BehaviourSuite):
    driver = Mqtt5ApiKeyDriver


class TestCoapPsk(BehaviourSuite):
    driver = CoapPskDriver


class TestCoapCert(BehaviourSuite):
    driver = CoapCertDriver


class TestLwm2mPsk(BehaviourSuite):
    driver = Lwm2mPskDriver
