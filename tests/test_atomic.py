"""mpnet_model.io.atomic: a write either fully replaces the file or leaves it (and its folder) untouched."""
import pytest

from mpnet_model.io.atomic import atomic_write, atomic_write_text


def test_atomic_write_replaces_content_and_creates_parents(tmp_path):
    path = tmp_path / 'sub' / 'dir' / 'data.bin'
    with atomic_write(path) as stream:
        stream.write(b'\x00\x01first')
    assert path.read_bytes() == b'\x00\x01first'
    with atomic_write(path) as stream:
        stream.write(b'second')
    assert path.read_bytes() == b'second'
    assert sorted(p.name for p in path.parent.iterdir()) == ['data.bin']      # no temp file left


def test_file_is_only_visible_after_the_block(tmp_path):
    path = tmp_path / 'late.txt'
    with atomic_write(path, 'w', suffix='.tmp.png') as stream:
        stream.write('half')
        assert not path.exists()
        temp_names = [p.name for p in tmp_path.iterdir()]
        assert len(temp_names) == 1 and temp_names[0].startswith('.late.txt.')
        assert temp_names[0].endswith('.tmp.png')    # writers that pick the format from the name see it
    assert path.read_text() == 'half'


def test_exception_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / 'keep.txt'
    path.write_text('old')
    with pytest.raises(RuntimeError, match='boom'):
        with atomic_write(path, 'w') as stream:
            stream.write('new, but never finished')
            raise RuntimeError('boom')
    assert path.read_text() == 'old'
    assert [p.name for p in tmp_path.iterdir()] == ['keep.txt']


def test_exception_on_new_file_leaves_nothing(tmp_path):
    path = tmp_path / 'never.bin'
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as stream:
            stream.write(b'x')
            raise KeyboardInterrupt      # BaseException too: a Ctrl-C mid-write must not leave a temp file
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text(tmp_path):
    path = tmp_path / 'a' / 'note.md'
    assert atomic_write_text(path, 'line 1\nline 2\n') == path
    assert path.read_text() == 'line 1\nline 2\n'
    atomic_write_text(str(path), '')
    assert path.read_text() == ''
    assert [p.name for p in path.parent.iterdir()] == ['note.md']
