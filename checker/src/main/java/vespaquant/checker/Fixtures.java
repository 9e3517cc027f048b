package vespaquant.checker;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.yahoo.searchlib.rankingexpression.evaluation.DoubleValue;
import com.yahoo.searchlib.rankingexpression.evaluation.TensorValue;
import com.yahoo.searchlib.rankingexpression.evaluation.Value;
import com.yahoo.tensor.IndexedTensor;
import com.yahoo.tensor.TensorType;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Reads the fixture folder the Python side writes (vespa_quant.vespa.check documents the format):
 * index.json describing each case, and raw little-endian row-major binary files of attribute
 * values (one row per document), query inputs (one row per query), candidate rows and expected
 * scores. A file shared by several cases is read and turned into tensors once.
 */
final class Fixtures {

    static final class FixtureError extends Exception {
        FixtureError(String message) { super(message); }
    }

    /** One input: a dense tensor type (or the scalar "double") and the file holding its rows. */
    record InputSpec(String name, String typeSpec, TensorType type, Path file) {
        boolean scalar() { return type.rank() == 0; }
    }

    record ClosenessSpec(String feature, String attribute, String query) {}

    record Case(String name, String schema, String profile, String phase, int nDocs, int nQueries,
                Map<String, InputSpec> attributes, Map<String, InputSpec> queries,
                Map<String, ClosenessSpec> closeness, Path candidates, int k, Path expected, double tolerance) {}

    /** The rows of one input file as frozen evaluator values, and raw int8 bytes for Hamming distances. */
    static final class Rows {
        final TensorType type;
        final int rows;
        final int cells;
        final Value[] values;
        final byte[] int8;

        Rows(TensorType type, int rows, int cells, Value[] values, byte[] int8) {
            this.type = type; this.rows = rows; this.cells = cells; this.values = values; this.int8 = int8;
        }
    }

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final List<String> PHASES = List.of("first-phase", "second-phase", "global-phase");

    final Path folder;
    final List<Case> cases;
    private final Map<String, Rows> rowsByFileAndType = new ConcurrentHashMap<>();

    private Fixtures(Path folder, List<Case> cases) {
        this.folder = folder;
        this.cases = cases;
    }

    static Fixtures read(Path folder) throws FixtureError {
        Path index = folder.resolve("index.json");
        JsonNode root;
        try {
            root = JSON.readTree(index.toFile());
        } catch (IOException e) {
            throw new FixtureError(index + ": " + e.getMessage());
        }
        if (root.path("version").asInt(-1) != 1)
            throw new FixtureError(index + ": \"version\" must be 1");
        List<Case> cases = new ArrayList<>();
        for (JsonNode node : root.path("cases")) {
            cases.add(readCase(folder, node, index));
        }
        if (cases.isEmpty()) throw new FixtureError(index + ": no cases");
        return new Fixtures(folder, cases);
    }

    private static Case readCase(Path folder, JsonNode node, Path index) throws FixtureError {
        String name = text(node, "name", index, "a case");
        String where = index + " case " + name;
        String phase = text(node, "phase", index, name);
        if (!PHASES.contains(phase))
            throw new FixtureError(where + ": phase " + phase + " is not one of " + PHASES);
        int nDocs = positive(node, "n_docs", where);
        int nQueries = positive(node, "n_queries", where);
        Map<String, InputSpec> attributes = new LinkedHashMap<>();
        for (var entry : fields(node.path("attributes"))) {
            attributes.put("attribute(" + entry.getKey() + ")", inputSpec(folder, entry.getKey(), entry.getValue(), where));
        }
        Map<String, InputSpec> queries = new LinkedHashMap<>();
        for (var entry : fields(node.path("queries"))) {
            queries.put(normalise(entry.getKey()), inputSpec(folder, entry.getKey(), entry.getValue(), where));
        }
        Map<String, ClosenessSpec> closeness = new LinkedHashMap<>();
        for (var entry : fields(node.path("closeness"))) {
            String feature = normalise(entry.getKey());
            String attribute = text(entry.getValue(), "attribute", index, name + " " + feature);
            String query = normalise(text(entry.getValue(), "query", index, name + " " + feature));
            closeness.put(feature, new ClosenessSpec(feature, attribute, query));
        }
        Path candidates = null;
        int k = nDocs;
        JsonNode candidateNode = node.path("candidates");
        if (!candidateNode.isMissingNode() && !candidateNode.isNull()) {
            candidates = folder.resolve(text(candidateNode, "file", index, name + " candidates"));
            k = positive(candidateNode, "k", where + " candidates");
        }
        Path expected = folder.resolve(text(node.path("expected"), "file", index, name + " expected"));
        double tolerance = node.path("tolerance").asDouble(1e-4);
        String schema = node.path("schema").isTextual() ? node.path("schema").asText() : null;
        return new Case(name, schema, text(node, "profile", index, name), phase, nDocs, nQueries,
                        attributes, queries, closeness, candidates, k, expected, tolerance);
    }

    private static InputSpec inputSpec(Path folder, String name, JsonNode node, String where) throws FixtureError {
        String typeSpec = text(node, "type", where, name);
        TensorType type;
        try {
            type = typeSpec.equals("double") ? TensorType.empty : TensorType.fromSpec(typeSpec);
        } catch (IllegalArgumentException e) {
            throw new FixtureError(where + ": " + name + " has type " + typeSpec + ": " + e.getMessage());
        }
        for (var dimension : type.dimensions()) {
            if (!dimension.isIndexed() || dimension.size().isEmpty())
                throw new FixtureError(where + ": " + name + " has type " + typeSpec + "; only dense bound tensors and double are supported");
        }
        return new InputSpec(name, typeSpec, type, folder.resolve(text(node, "file", where, name)));
    }

    /** Rows of ``spec``'s file, checked to hold exactly ``rows`` rows; cached by file and type. */
    Rows rows(InputSpec spec, int rows, String where) throws FixtureError {
        String key = spec.file() + "\u0000" + spec.typeSpec();
        Rows cached = rowsByFileAndType.get(key);
        if (cached == null) {
            cached = load(spec, where);
            rowsByFileAndType.putIfAbsent(key, cached);
        }
        if (cached.rows != rows)
            throw new FixtureError(where + ": " + spec.file().getFileName() + " holds " + cached.rows + " rows of "
                                   + spec.typeSpec() + ", expected " + rows);
        return cached;
    }

    private static Rows load(InputSpec spec, String where) throws FixtureError {
        TensorType type = spec.type();
        int cells = 1;
        for (var dimension : type.dimensions()) cells *= dimension.size().get().intValue();
        int cellBytes = spec.scalar() ? 8 : switch (type.valueType()) {
            case DOUBLE -> 8;
            case FLOAT -> 4;
            case BFLOAT16 -> 2;
            case INT8 -> 1;
        };
        ByteBuffer buffer = readAll(spec.file(), where);
        int rowBytes = cells * cellBytes;
        if (buffer.capacity() % rowBytes != 0)
            throw new FixtureError(where + ": " + spec.file().getFileName() + " has " + buffer.capacity()
                                   + " bytes, not a whole number of " + spec.typeSpec() + " rows (" + rowBytes + " bytes)");
        int rows = buffer.capacity() / rowBytes;
        if (spec.scalar()) {
            Value[] scalars = new Value[rows];
            for (int r = 0; r < rows; r++) scalars[r] = DoubleValue.frozen(buffer.getDouble(r * 8));
            return new Rows(type, rows, 1, scalars, null);
        }
        Value[] tensors = new Value[rows];
        byte[] int8 = null;
        if (type.valueType() == TensorType.Value.INT8) {
            int8 = new byte[buffer.capacity()];
            buffer.get(0, int8);
        }
        for (int r = 0; r < rows; r++) {
            int base = r * rowBytes;
            if (type.valueType() == TensorType.Value.DOUBLE) {
                double[] values = new double[cells];
                for (int c = 0; c < cells; c++) values[c] = buffer.getDouble(base + 8 * c);
                tensors[r] = new TensorValue(IndexedTensor.Builder.of(type, values).build()).freeze();
            } else {
                float[] values = new float[cells];
                for (int c = 0; c < cells; c++) {
                    values[c] = switch (type.valueType()) {
                        case FLOAT -> buffer.getFloat(base + 4 * c);
                        case BFLOAT16 -> Float.intBitsToFloat((buffer.getShort(base + 2 * c) & 0xffff) << 16);
                        case INT8 -> int8[base + c];
                        default -> throw new IllegalStateException();
                    };
                }
                tensors[r] = new TensorValue(IndexedTensor.Builder.of(type, values).build()).freeze();
            }
        }
        return new Rows(type, rows, cells, tensors, int8);
    }

    /** (rows, columns) int32 candidate document rows, each in [0, nDocs). */
    int[][] candidates(Case c) throws FixtureError {
        String where = "case " + c.name() + " candidates";
        ByteBuffer buffer = readAll(c.candidates(), where);
        expectSize(buffer, (long) c.nQueries() * c.k() * 4, c.candidates(), "int32 (" + c.nQueries() + ", " + c.k() + ")", where);
        int[][] rows = new int[c.nQueries()][c.k()];
        for (int q = 0; q < c.nQueries(); q++) {
            for (int j = 0; j < c.k(); j++) {
                int doc = buffer.getInt((q * c.k() + j) * 4);
                if (doc < 0 || doc >= c.nDocs())
                    throw new FixtureError(where + ": query row " + q + " names document row " + doc + ", outside [0, " + c.nDocs() + ")");
                rows[q][j] = doc;
            }
        }
        return rows;
    }

    /** (Q, k) float64 expected scores, in candidate (or document) order. */
    static double[][] expected(Case c) throws FixtureError {
        String where = "case " + c.name() + " expected";
        ByteBuffer buffer = readAll(c.expected(), where);
        expectSize(buffer, (long) c.nQueries() * c.k() * 8, c.expected(), "float64 (" + c.nQueries() + ", " + c.k() + ")", where);
        double[][] rows = new double[c.nQueries()][c.k()];
        for (int q = 0; q < c.nQueries(); q++)
            for (int j = 0; j < c.k(); j++) rows[q][j] = buffer.getDouble((q * c.k() + j) * 8);
        return rows;
    }

    private static void expectSize(ByteBuffer buffer, long bytes, Path file, String shape, String where) throws FixtureError {
        if (buffer.capacity() != bytes)
            throw new FixtureError(where + ": " + file.getFileName() + " has " + buffer.capacity() + " bytes, expected " + shape + " = " + bytes);
    }

    private static ByteBuffer readAll(Path file, String where) throws FixtureError {
        try {
            return ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN);
        } catch (IOException e) {
            throw new FixtureError(where + ": cannot read " + file + ": " + e.getMessage());
        }
    }

    /** Feature names as Vespa prints them: no whitespace, so "closeness(field, f)" matches "closeness(field,f)". */
    static String normalise(String feature) {
        return feature.replaceAll("\\s+", "");
    }

    private static Iterable<Map.Entry<String, JsonNode>> fields(JsonNode node) {
        List<Map.Entry<String, JsonNode>> entries = new ArrayList<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) entries.add(it.next());
        return entries;
    }

    private static String text(JsonNode node, String key, Object where, String what) throws FixtureError {
        JsonNode value = node.path(key);
        if (!value.isTextual()) throw new FixtureError(where + ": " + what + ": missing string \"" + key + "\"");
        return value.asText();
    }

    private static int positive(JsonNode node, String key, String where) throws FixtureError {
        JsonNode value = node.path(key);
        if (!value.canConvertToInt() || value.asInt() <= 0)
            throw new FixtureError(where + ": \"" + key + "\" must be a positive integer");
        return value.asInt();
    }
}
