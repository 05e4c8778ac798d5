"""Errors that name the difference first: another cell kind before any field, 0 == 0.0."""

import jax
import pytest

import jaxrnn
from jaxrnn import checkpoint
from jaxrnn._config import model_difference, model_spec


def test_a_checkpoint_of_another_cell_kind_says_so_first(tmp_path):
  saved = jaxrnn.rnn_layers("lstm", 4)
  params = saved.init(jax.random.key(0), 3)
  checkpoint.save(tmp_path, 0, params, model=saved)
  with pytest.raises(ValueError, match="saved for a different model") as err:
    checkpoint.restore(tmp_path, params, model=jaxrnn.rnn_layers("gru", 4))
  assert "another kind, config.kind: checkpoint has 'lstm', model has 'gru'" in str(err.value)
  assert "forget_bias" not in str(err.value)


@pytest.mark.parametrize(
  "saved, loaded, message",
  [
    (  # the kind sits deeper than a field that sorts first (dropout_rate)
      jaxrnn.stack([jaxrnn.recurrent(jaxrnn.lstm(4))], dropout_rate=0.1),
      jaxrnn.stack([jaxrnn.recurrent(jaxrnn.gru(4))]),
      "another kind, config.layers.recurrent.cell: checkpoint has 'lstm', model has 'gru'",
    ),
    (
      jaxrnn.recurrent(jaxrnn.lstm(4)),
      jaxrnn.rnn_layers("lstm", 4),
      "another kind, name: checkpoint has 'recurrent', model has 'rnn_layers'",
    ),
    (jaxrnn.lstm(4), jaxrnn.lstm(4, forget_bias=0.5), "config.forget_bias: checkpoint has 1.0"),
    (jaxrnn.lstm(4, forget_bias=0), jaxrnn.lstm(4, forget_bias=0.0), None),  # equal numbers
  ],
)
def test_model_difference_names_the_kind_before_any_field(saved, loaded, message):
  diff = model_difference(model_spec(saved), model_spec(loaded))
  assert diff == message if message is None else diff.startswith(message)
