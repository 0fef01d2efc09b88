"""Lists and dicts that publish themselves when changed in place.

Reading a list or dict attribute gives a SyncedList / SyncedDict: a copy of the attribute's
value whose mutating methods write the whole value back (the root of a nested value is
published when any level changes). Nested containers are wrapped when first reached.
"""


def _wrap(value, publish):
    if type(value) is list:
        return SyncedList(value, publish)
    if type(value) is dict:
        return SyncedDict(value, publish)
    return value


def _mutator(base_method):
    def method(self, *args, **kwargs):
        result = base_method(self, *args, **kwargs)
        self._publish()
        return result

    method.__name__ = base_method.__name__
    method.__doc__ = base_method.__doc__
    return method


class SyncedList(list):
    """A list attribute's value; in-place changes are published."""

    __slots__ = ("_publish",)

    def __init__(self, items, publish):
        super().__init__(items)
        self._publish = publish

    def __getitem__(self, index):
        item = list.__getitem__(self, index)
        if isinstance(index, slice):
            return item
        wrapped = _wrap(item, self._publish)
        if wrapped is not item:
            list.__setitem__(self, index, wrapped)
        return wrapped

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __iadd__(self, other):
        list.extend(self, other)
        self._publish()
        return self

    def __imul__(self, n):
        list.__imul__(self, n)
        self._publish()
        return self

    def __reduce__(self):  # pickles as a plain list
        return (list, (list(self),))

    append = _mutator(list.append)
    extend = _mutator(list.extend)
    insert = _mutator(list.insert)
    pop = _mutator(list.pop)
    remove = _mutator(list.remove)
    clear = _mutator(list.clear)
    sort = _mutator(list.sort)
    reverse = _mutator(list.reverse)
    __setitem__ = _mutator(list.__setitem__)
    __delitem__ = _mutator(list.__delitem__)


class SyncedDict(dict):
    """A dict attribute's value; in-place changes are published."""

    __slots__ = ("_publish",)

    def __init__(self, items, publish):
        super().__init__(items)
        self._publish = publish

    def __getitem__(self, key):
        item = dict.__getitem__(self, key)
        wrapped = _wrap(item, self._publish)
        if wrapped is not item:
            dict.__setitem__(self, key, wrapped)
        return wrapped

    def get(self, key, default=None):
        return self[key] if key in self else default

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]

    def __ior__(self, other):
        dict.update(self, other)
        self._publish()
        return self

    def __reduce__(self):  # pickles as a plain dict
        return (dict, (dict(self),))

    __setitem__ = _mutator(dict.__setitem__)
    __delitem__ = _mutator(dict.__delitem__)
    pop = _mutator(dict.pop)
    popitem = _mutator(dict.popitem)
    clear = _mutator(dict.clear)
    update = _mutator(dict.update)
    setdefault = _mutator(dict.setdefault)
