"""The per-association copy of the SCP's presentation contexts (service/dicom/fastpath/frontdoor.py)."""

from __future__ import annotations

import copy

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from service.data.phantom import CR_IMAGE_STORAGE
from service.dicom.fastpath.frontdoor import AcceptorContexts
from service.dicom.scp import UNCOMPRESSED_TRANSFER_SYNTAXES, build_context, storage_contexts
from tests.helpers import make_config
from tests.peers import RunningSCP


def _contexts():
    contexts = [build_context(Verification, list(UNCOMPRESSED_TRANSFER_SYNTAXES))] + storage_contexts()
    contexts[1].scp_role = True
    return contexts


def test_the_copy_equals_a_deep_copy_and_shares_nothing_mutable():
    original = AcceptorContexts(_contexts())
    cheap, deep = copy.deepcopy(original), copy.deepcopy(list(original))
    assert type(cheap) is list and len(cheap) == len(deep) == len(original)
    for c, d, o in zip(cheap, deep, original):
        assert type(c) is type(o) and vars(c) == vars(d) == vars(o)
        assert c is not o and c.transfer_syntax is not o.transfer_syntax
    cheap[1].transfer_syntax.append("1.2.3.4")
    cheap[1].scp_role = False
    assert "1.2.3.4" not in original[1].transfer_syntax and original[1].scp_role is True


def test_an_association_negotiates_on_its_own_copy(tmp_path):
    running = RunningSCP(make_config(tmp_path))
    scp, host, port, cfg = running.scp, running.host, running.port, running.cfg
    try:
        assert isinstance(scp.server.contexts, AcceptorContexts)
        before = [vars(c).copy() for c in scp.server.contexts]
        for _ in range(2):
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context(CR_IMAGE_STORAGE)
            ae.add_requested_context(Verification)
            assoc = ae.associate(host, port, ae_title=cfg.dicom.ae_title)
            assert assoc.is_established
            assert {str(c.abstract_syntax) for c in assoc.accepted_contexts} == {CR_IMAGE_STORAGE, Verification}
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        assert [vars(c) for c in scp.server.contexts] == before
    finally:
        running.stop()
